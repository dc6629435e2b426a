"""The fixed analytical queries: each runs unchanged on polars SQL (the worker) and on DuckDB.

Every query returns a small result, so what is compared is the engine, not the result encoding.
"""

from __future__ import annotations

QUERIES: dict[str, str] = {
    "join_groupby": (
        "SELECT c.region, p.category, SUM(s.quantity * s.unit_price) AS revenue, COUNT(*) AS sales "
        "FROM sales s JOIN customers c ON s.customer_id = c.customer_id "
        "JOIN products p ON s.product_id = p.product_id "
        "GROUP BY c.region, p.category ORDER BY revenue DESC"
    ),
    "groupby_topk": (
        "SELECT customer_id, SUM(quantity * unit_price) AS revenue, COUNT(*) AS sales FROM sales "
        "GROUP BY customer_id ORDER BY revenue DESC, customer_id LIMIT 100"
    ),
    "window_rank": (
        "SELECT category, product_id, revenue FROM ("
        "SELECT p.category, t.product_id, t.revenue, "
        "ROW_NUMBER() OVER (PARTITION BY p.category ORDER BY t.revenue DESC) AS rank "
        "FROM (SELECT product_id, SUM(quantity * unit_price) AS revenue FROM sales GROUP BY product_id) t "
        "JOIN products p ON t.product_id = p.product_id) r "
        "WHERE rank <= 3 ORDER BY category, revenue DESC"
    ),
    "window_share": (
        "SELECT product_id, day, amount FROM ("
        "SELECT product_id, day, quantity * unit_price AS amount, "
        "AVG(quantity * unit_price) OVER (PARTITION BY product_id) AS product_avg FROM sales) w "
        "WHERE amount > 3.5 * product_avg ORDER BY amount DESC, product_id, day LIMIT 100"
    ),
    "topk_rows": (
        "SELECT sale_id, customer_id, quantity * unit_price AS amount FROM sales "
        "ORDER BY amount DESC, sale_id LIMIT 10"
    ),
    "filter_distinct": (
        "SELECT p.category, COUNT(DISTINCT s.customer_id) AS buyers FROM sales s "
        "JOIN products p ON s.product_id = p.product_id "
        "WHERE s.day >= DATE '2025-01-01' AND s.quantity >= 10 GROUP BY p.category ORDER BY p.category"
    ),
}
