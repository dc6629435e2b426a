{{/* The chart name, or nameOverride. */}}
{{- define "podq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects: the release name when it contains the chart name. */}}
{{- define "podq.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "podq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The standard labels of every object of the chart. */}}
{{- define "podq.labels" -}}
helm.sh/chart: {{ include "podq.chart" . }}
{{ include "podq.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: podq
{{- end }}

{{/* The labels that select the controller pod (never a worker pod: those are named podq-worker). */}}
{{- define "podq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "podq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "podq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespace of the worker pods (and of the Role that lets the controller manage them). */}}
{{- define "podq.workerNamespace" -}}
{{- default .Release.Namespace .Values.worker.namespace }}
{{- end }}

{{- define "podq.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "podq.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository (default .Chart.AppVersion .Values.worker.image.tag) }}
{{- end }}

{{/* Whether API auth is on: tokens from values, or a Secret the user manages (never both). */}}
{{- define "podq.authEnabled" -}}
{{- if and .Values.auth.tokens .Values.auth.existingSecret }}
{{- fail "auth: set auth.tokens or auth.existingSecret, not both" }}
{{- end }}
{{- if or .Values.auth.tokens .Values.auth.existingSecret }}true{{ end }}
{{- end }}

{{- define "podq.tokensSecretName" -}}
{{- default (printf "%s-tokens" (include "podq.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "podq.tokensSecretKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}tokens{{ end }}
{{- end }}

{{- define "podq.claimName" -}}
{{- default (printf "%s-data" (include "podq.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/*
The worker pods' labels, as the controller sets them (controller/launchers/kubernetes/podspec.py): the NetworkPolicy
selects exactly one release's workers.
*/}}
{{- define "podq.workerSelectorLabels" -}}
app.kubernetes.io/name: podq-worker
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The environment of the controller (a ConfigMap): what the chart decides, then `config` with each camelCase
key as PODQ_<UPPER_SNAKE>. Scalars are rendered with toJson and unquoted, so large integers never become
floats in exponent notation; maps and lists stay JSON.
*/}}
{{- define "podq.env" -}}
PODQ_LAUNCHER: kubernetes
PODQ_HOST: 0.0.0.0
PODQ_PORT: "8000"
PODQ_DATA_DIR: /var/lib/podq
PODQ_KUBE_NAMESPACE: {{ include "podq.workerNamespace" . | quote }}
PODQ_KUBE_INSTANCE: {{ .Release.Name | quote }}
PODQ_WORKER_IMAGE: {{ include "podq.workerImage" . | quote }}
PODQ_WORKER_IMAGE_PULL_POLICY: {{ .Values.worker.image.pullPolicy | quote }}
PODQ_WORKER_NODE_SELECTOR: {{ .Values.worker.nodeSelector | toJson | quote }}
PODQ_WORKER_TOLERATIONS: {{ .Values.worker.tolerations | toJson | quote }}
PODQ_WORKER_IMAGE_PULL_SECRETS: {{ .Values.worker.imagePullSecrets | toJson | quote }}
PODQ_WORKER_TMP_SIZE: {{ .Values.worker.tmpSize | quote }}
{{- /* Owned by the controller's ServiceAccount, the worker pods go with the release (helm uninstall);
owners cannot be in another namespace. */}}
{{- $sameNamespace := eq (include "podq.workerNamespace" .) .Release.Namespace }}
PODQ_WORKER_OWNED_BY_SERVICE_ACCOUNT: {{ and .Values.worker.ownedByServiceAccount $sameNamespace | toJson | quote }}
{{- with .Values.worker.serviceAccountName }}
PODQ_WORKER_SERVICE_ACCOUNT: {{ . | quote }}
{{- end }}
{{- with .Values.worker.priorityClassName }}
PODQ_WORKER_PRIORITY_CLASS: {{ . | quote }}
{{- end }}
PODQ_METRICS_REQUIRE_AUTH: {{ .Values.metrics.requireAuth | toJson | quote }}
{{- range $key, $value := .Values.config }}
{{ printf "PODQ_%s" ($key | snakecase | upper) }}: {{ (kindIs "string" $value) | ternary $value (toJson $value) | quote }}
{{- end }}
{{- end }}

{{/* Whether the store is PostgreSQL: a URL from values, or a Secret the user manages (never both). */}}
{{- define "podq.database" -}}
{{- if and .Values.database.url .Values.database.existingSecret }}
{{- fail "database: set database.url or database.existingSecret, not both" }}
{{- end }}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{- define "podq.databaseSecretName" -}}
{{- default (printf "%s-database" (include "podq.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{- define "podq.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}

{{/* The controller pods: several only on PostgreSQL (the schema says so too; this holds without it). */}}
{{- define "podq.replicas" -}}
{{- $replicas := int .Values.replicaCount }}
{{- if and (gt $replicas 1) (not (include "podq.database" .)) }}
{{- fail (printf "replicaCount is %d: more than one controller needs PostgreSQL (set database.url or database.existingSecret); the SQLite store is one process's file" $replicas) }}
{{- end }}
{{- $replicas }}
{{- end }}
