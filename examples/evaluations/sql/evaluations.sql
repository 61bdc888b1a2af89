-- Evaluations: scores an application gives its agents' executions.

-- name: evaluations.create :one
-- Record one evaluation of an execution and return it.
INSERT INTO evaluations (execution_id, metric, score, passed, details)
VALUES (:execution_id, :metric, :score, :passed, :details)
RETURNING id, execution_id, metric, score, passed, details, created_at;

-- name: evaluations.get :one
-- Fetch one evaluation by id.
SELECT id, execution_id, metric, score, passed, details, created_at
FROM evaluations
WHERE id = :id;

-- name: evaluations.list :many
-- A keyset page of evaluations, optionally of one execution or one metric.
-- sort: created_at timestamptz, score float8
SELECT id, execution_id, metric, score, passed, details, created_at
FROM evaluations
WHERE
    (:execution_id::uuid IS NULL OR execution_id = :execution_id)
    AND (:metric::text IS NULL OR metric = :metric)
    AND {keyset}
ORDER BY {order}
LIMIT :limit;

-- name: evaluations.count :scalar
-- Count evaluations, optionally of one execution or one metric.
SELECT count(*)
FROM evaluations
WHERE
    (:execution_id::uuid IS NULL OR execution_id = :execution_id)
    AND (:metric::text IS NULL OR metric = :metric);

-- name: evaluations.pass_rate :scalar
-- The share of passed evaluations for a metric (NULL when there are none).
SELECT avg(passed::int)::float8
FROM evaluations
WHERE metric = :metric;

-- name: evaluations.metrics :many
-- Every metric evaluated so far, in order: one column, bound to str.
SELECT DISTINCT metric
FROM evaluations
ORDER BY metric;

-- name: evaluations.delete :exec
-- Delete one evaluation.
DELETE FROM evaluations
WHERE id = :id;
