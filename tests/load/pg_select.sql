-- pgbench, -S style: one read-model row by primary key, as eventsd's
-- GET /todo/{id} reads it (rows 1..:rows made by pg_schema.sql).
--   pgbench -n -M prepared -c 16 -j 2 -T 10 -D rows=10000 -f tests/load/pg_select.sql
\set k random(1, :rows)
SELECT id::text, description, status, version FROM bench_todos WHERE id = md5('todo' || :k)::uuid;
