-- The example application's table: evaluations of the toolkit's executions.
-- It runs after every toolkit migration (the toolkit applies its own first).
-- depends: 0007.least-privilege

CREATE TABLE evaluations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    execution_id uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    metric text NOT NULL CHECK (metric ~ '^[a-z][a-z0-9_]{0,62}$'),
    score double precision NOT NULL CHECK (score BETWEEN 0 AND 1),
    passed boolean NOT NULL,
    details jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX evaluations_execution_idx ON evaluations (execution_id, created_at, id);
CREATE INDEX evaluations_metric_idx ON evaluations (metric, created_at, id);
CREATE INDEX evaluations_created_idx ON evaluations (created_at, id);
CREATE INDEX evaluations_score_idx ON evaluations (score, id);
