-- pgbench: PostgreSQL as the event store, the classic way. One transaction
-- appends the event row (a new stream, version 1) and upserts the read-model
-- row, as eventsd's POST /todo does in two systems; synchronous_commit stays on.
-- The todo id is drawn by the client (two random 64-bit halves), as an
-- application would, so the transaction costs four round trips and no more.
--   pgbench -n -M prepared -c 16 -j 2 -T 10 -f tests/load/pg_append_upsert.sql
\set a random(0, 9223372036854775806)
\set b random(0, 9223372036854775806)
BEGIN;
INSERT INTO bench_events (event_id, stream, version, type, data)
  VALUES (gen_random_uuid(),
          'todo-' || (lpad(to_hex(:a::bigint), 16, '0') || lpad(to_hex(:b::bigint), 16, '0'))::uuid,
          1, 'created', '{"description": "benchmark todo", "status": "Created"}');
INSERT INTO bench_todos AS t (id, description, status, version, created_position)
  VALUES ((lpad(to_hex(:a::bigint), 16, '0') || lpad(to_hex(:b::bigint), 16, '0'))::uuid,
          'benchmark todo', 'Created', 1, currval('bench_events_position_seq'))
  ON CONFLICT (id) DO UPDATE SET description = EXCLUDED.description,
                                 status = EXCLUDED.status, version = EXCLUDED.version;
END;
