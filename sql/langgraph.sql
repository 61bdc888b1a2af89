-- LangGraph checkpoints (toolkit.integrations.langgraph). A checkpoint row
-- holds the checkpoint without its channel values; lg_blobs holds each
-- (channel, version) once, a list that grew by appending as a delta on an
-- earlier version (base_version); lg_writes holds the pending writes.
-- langgraph.list returns one row stream: kind 'c' (a checkpoint), 'b' (a
-- segment of a channel value at depth n of its delta chain) and 'w' (a
-- pending write); langgraph.get, one row holding the same as arrays.
-- Thread ids are per tenant: every query reads and writes the transaction's
-- tenant's threads (the default tenant's without one), and joins carry the
-- tenant along the composite keys.

-- name: langgraph.lock_threads :scalar
-- Take the write locks of the threads until the transaction ends; returns how many keys.
-- In key order (as every taker does), and in a statement of its own: the next one checks
-- "no row has this key" after every earlier writer of these threads committed (maintain's
-- carry included); a lock taken inside that statement would leave its older snapshot.
SELECT count(pg_advisory_xact_lock(k.key))
FROM (
    SELECT DISTINCT lg_thread_lock_key((SELECT toolkit_tenant_or_default()), t.thread_id) AS key
    FROM unnest(:thread_ids::text[]) AS t (thread_id)
    ORDER BY key
) AS k;

-- name: langgraph.put :many
-- Store a checkpoint and its changed channel values; returns the channels whose value row was new.
WITH blobs AS (
    INSERT INTO lg_blobs (
        thread_id, checkpoint_ns, channel, version, type, base_version, item_count, blob
    )
    SELECT
        :thread_id::text, :checkpoint_ns::text, v.channel, v.version, v.type, v.base_version,
        v.item_count, v.blob
    FROM
        unnest(
            :channels::text[], :versions::text[], :types::text[], :base_versions::text[],
            :item_counts::integer[], :blobs::bytea[]
        ) AS v (channel, version, type, base_version, item_count, blob)
    WHERE
        NOT EXISTS (
            SELECT FROM lg_blobs AS b
            WHERE
                b.tenant_id = (SELECT toolkit_tenant_or_default())
                AND b.thread_id = :thread_id AND b.checkpoint_ns = :checkpoint_ns
                AND b.channel = v.channel AND b.version = v.version
        )
    ON CONFLICT DO NOTHING
    RETURNING channel
),

updated AS (
    UPDATE lg_checkpoints SET checkpoint = :checkpoint, metadata = :metadata
    WHERE
        tenant_id = (SELECT toolkit_tenant_or_default())
        AND thread_id = :thread_id AND checkpoint_ns = :checkpoint_ns
        AND checkpoint_id = :checkpoint_id
    RETURNING checkpoint_id
),

saved AS (
    INSERT INTO lg_checkpoints (
        thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata
    )
    SELECT
        :thread_id, :checkpoint_ns, :checkpoint_id, :parent_checkpoint_id, :checkpoint, :metadata
    WHERE NOT EXISTS (SELECT FROM updated)
    ON CONFLICT DO NOTHING
)

SELECT blobs.channel FROM blobs;

-- name: langgraph.put_writes :exec
-- Store a task's pending writes; writes already stored for (task, idx) are kept.
INSERT INTO lg_writes (
    thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
)
SELECT
    :thread_id::text, :checkpoint_ns::text, :checkpoint_id::text, :task_id::text,
    :task_path::text, w.idx, w.channel, w.type, w.blob
FROM
    unnest(:idxs::integer[], :channels::text[], :types::text[], :blobs::bytea[])
        AS w (idx, channel, type, blob)
WHERE
    NOT EXISTS (
        SELECT FROM lg_writes AS o
        WHERE
            o.tenant_id = (SELECT toolkit_tenant_or_default())
            AND o.thread_id = :thread_id AND o.checkpoint_ns = :checkpoint_ns
            AND o.checkpoint_id = :checkpoint_id AND o.task_id = :task_id AND o.idx = w.idx
    )
ON CONFLICT DO NOTHING;

-- name: langgraph.upsert_writes :exec
-- Store a task's special writes (error, interrupt, ...), replacing those stored for (task, idx).
WITH incoming AS (
    SELECT w.idx, w.channel, w.type, w.blob
    FROM
        unnest(:idxs::integer[], :channels::text[], :types::text[], :blobs::bytea[])
            AS w (idx, channel, type, blob)
),

replaced AS (
    UPDATE lg_writes AS o SET channel = i.channel, type = i.type, blob = i.blob
    FROM incoming AS i
    WHERE
        o.tenant_id = (SELECT toolkit_tenant_or_default())
        AND o.thread_id = :thread_id AND o.checkpoint_ns = :checkpoint_ns
        AND o.checkpoint_id = :checkpoint_id AND o.task_id = :task_id AND o.idx = i.idx
    RETURNING o.idx
)

INSERT INTO lg_writes (
    thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
)
SELECT
    :thread_id::text, :checkpoint_ns::text, :checkpoint_id::text, :task_id::text,
    :task_path::text, i.idx, i.channel, i.type, i.blob
FROM incoming AS i
WHERE NOT EXISTS (SELECT FROM replaced AS r WHERE r.idx = i.idx)
ON CONFLICT DO NOTHING;

-- name: langgraph.get :optional
-- The newest checkpoint of a thread namespace at or below :upper, with its values and writes.
-- One row: the checkpoint, its value segments (channel, top version, depth in the delta chain,
-- item count, type, bytes) and its pending writes as parallel arrays (NULL when there are
-- none), so the client builds one record rather than one per segment and write.
WITH RECURSIVE head AS (
    SELECT
        tenant_id, thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint,
        metadata
    FROM lg_checkpoints
    WHERE
        tenant_id = (SELECT toolkit_tenant_or_default())
        AND thread_id = :thread_id AND checkpoint_ns = :checkpoint_ns
        AND checkpoint_id <= :upper
    ORDER BY checkpoint_id DESC
    LIMIT 1
),

segments AS (
    SELECT
        b.tenant_id, b.thread_id, b.checkpoint_ns, b.channel, b.version AS top_version,
        b.base_version, 0 AS depth, b.item_count, b.type, b.blob
    FROM head AS h
    CROSS JOIN LATERAL jsonb_each_text(h.checkpoint -> 'channel_versions') AS v (channel, version)
    -- LIMIT 1 keeps this a primary-key lookup per channel (never a scan of the thread's values).
    CROSS JOIN
        LATERAL (
            SELECT
                lg_blobs.tenant_id, lg_blobs.thread_id, lg_blobs.checkpoint_ns, lg_blobs.channel,
                lg_blobs.version, lg_blobs.base_version, lg_blobs.item_count, lg_blobs.type,
                lg_blobs.blob
            FROM lg_blobs
            WHERE
                lg_blobs.tenant_id = h.tenant_id
                AND lg_blobs.thread_id = h.thread_id AND lg_blobs.checkpoint_ns = h.checkpoint_ns
                AND lg_blobs.channel = v.channel AND lg_blobs.version = v.version
            ORDER BY lg_blobs.version
            LIMIT 1
        ) AS b
    UNION ALL
    SELECT
        s.tenant_id, s.thread_id, s.checkpoint_ns, s.channel, s.top_version, b.base_version,
        s.depth + 1 AS depth,
        b.item_count, b.type, b.blob
    FROM segments AS s
    CROSS JOIN
        LATERAL (
            SELECT lg_blobs.base_version, lg_blobs.item_count, lg_blobs.type, lg_blobs.blob
            FROM lg_blobs
            WHERE
                lg_blobs.tenant_id = s.tenant_id
                AND lg_blobs.thread_id = s.thread_id AND lg_blobs.checkpoint_ns = s.checkpoint_ns
                AND lg_blobs.channel = s.channel AND lg_blobs.version = s.base_version
            ORDER BY lg_blobs.version
            LIMIT 1
        ) AS b
),

chain AS (
    SELECT
        array_agg(channel) AS channels, array_agg(top_version) AS versions,
        array_agg(depth) AS depths, array_agg(item_count) AS item_counts,
        array_agg(type) AS types, array_agg(blob) AS blobs
    FROM segments
),

pending AS (
    SELECT
        array_agg(w.task_id) AS write_task_ids, array_agg(w.task_path) AS write_task_paths,
        array_agg(w.idx) AS write_idxs, array_agg(w.channel) AS write_channels,
        array_agg(w.type) AS write_types, array_agg(w.blob) AS write_blobs
    FROM head
    INNER JOIN lg_writes AS w
        ON
            head.tenant_id = w.tenant_id
            AND head.thread_id = w.thread_id AND head.checkpoint_ns = w.checkpoint_ns
            AND head.checkpoint_id = w.checkpoint_id
)

SELECT
    head.thread_id, head.checkpoint_ns, head.checkpoint_id, head.parent_checkpoint_id,
    head.checkpoint, head.metadata, chain.channels, chain.versions, chain.depths,
    chain.item_counts, chain.types, chain.blobs, pending.write_task_ids,
    pending.write_task_paths, pending.write_idxs, pending.write_channels, pending.write_types,
    pending.write_blobs
FROM head
CROSS JOIN chain
CROSS JOIN pending;

-- name: langgraph.list :many
-- Checkpoints matching optional thread, namespace, id, metadata and before filters, newest first.
WITH RECURSIVE head AS (
    SELECT
        tenant_id, thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint,
        metadata
    FROM lg_checkpoints
    WHERE
        tenant_id = (SELECT toolkit_tenant_or_default())
        AND (:thread_id::text IS NULL OR thread_id = :thread_id)
        AND (:checkpoint_ns::text IS NULL OR checkpoint_ns = :checkpoint_ns)
        AND (:checkpoint_id::text IS NULL OR checkpoint_id = :checkpoint_id)
        AND (:before::text IS NULL OR checkpoint_id < :before)
        AND metadata @> :filter::jsonb
    ORDER BY checkpoint_id DESC
    LIMIT :limit
),

seeds AS (
    SELECT DISTINCT h.tenant_id, h.thread_id, h.checkpoint_ns, v.channel, v.version
    FROM head AS h
    CROSS JOIN LATERAL jsonb_each_text(h.checkpoint -> 'channel_versions') AS v (channel, version)
),

segments AS (
    SELECT
        b.tenant_id, b.thread_id, b.checkpoint_ns, b.channel, b.version AS top_version,
        b.base_version, 0 AS depth, b.item_count, b.type, b.blob
    FROM seeds AS s
    CROSS JOIN
        LATERAL (
            SELECT
                lg_blobs.tenant_id, lg_blobs.thread_id, lg_blobs.checkpoint_ns, lg_blobs.channel,
                lg_blobs.version, lg_blobs.base_version, lg_blobs.item_count, lg_blobs.type,
                lg_blobs.blob
            FROM lg_blobs
            WHERE
                lg_blobs.tenant_id = s.tenant_id
                AND lg_blobs.thread_id = s.thread_id AND lg_blobs.checkpoint_ns = s.checkpoint_ns
                AND lg_blobs.channel = s.channel AND lg_blobs.version = s.version
            ORDER BY lg_blobs.version
            LIMIT 1
        ) AS b
    UNION ALL
    SELECT
        s.tenant_id, s.thread_id, s.checkpoint_ns, s.channel, s.top_version, b.base_version,
        s.depth + 1 AS depth,
        b.item_count, b.type, b.blob
    FROM segments AS s
    CROSS JOIN
        LATERAL (
            SELECT lg_blobs.base_version, lg_blobs.item_count, lg_blobs.type, lg_blobs.blob
            FROM lg_blobs
            WHERE
                lg_blobs.tenant_id = s.tenant_id
                AND lg_blobs.thread_id = s.thread_id AND lg_blobs.checkpoint_ns = s.checkpoint_ns
                AND lg_blobs.channel = s.channel AND lg_blobs.version = s.base_version
            ORDER BY lg_blobs.version
            LIMIT 1
        ) AS b
)

SELECT
    'c' AS kind, head.thread_id, head.checkpoint_ns, head.checkpoint_id,
    head.parent_checkpoint_id, NULL::text AS channel, NULL::text AS version,
    NULL::integer AS depth, NULL::integer AS item_count, NULL::text AS type,
    NULL::text AS task_id, NULL::text AS task_path, NULL::integer AS idx,
    NULL::bytea AS data, head.checkpoint, head.metadata
FROM head
UNION ALL
SELECT
    'b' AS kind, segments.thread_id, segments.checkpoint_ns, NULL AS checkpoint_id,
    NULL AS parent_checkpoint_id, segments.channel, segments.top_version AS version,
    segments.depth, segments.item_count, segments.type, NULL AS task_id, NULL AS task_path,
    NULL AS idx, segments.blob AS data, NULL AS checkpoint, NULL AS metadata
FROM segments
UNION ALL
SELECT
    'w' AS kind, w.thread_id, w.checkpoint_ns, w.checkpoint_id, NULL AS parent_checkpoint_id,
    w.channel, NULL AS version, NULL AS depth, NULL AS item_count, w.type, w.task_id,
    w.task_path, w.idx, w.blob AS data, NULL AS checkpoint, NULL AS metadata
FROM head
INNER JOIN lg_writes AS w
    ON
        head.tenant_id = w.tenant_id
        AND head.thread_id = w.thread_id AND head.checkpoint_ns = w.checkpoint_ns
        AND head.checkpoint_id = w.checkpoint_id;

-- name: langgraph.delete_threads :exec
-- Delete every checkpoint, value and write of the given threads.
WITH checkpoints_gone AS (
    DELETE FROM lg_checkpoints
    WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND thread_id = any(:thread_ids::text[])
),

writes_gone AS (
    DELETE FROM lg_writes
    WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND thread_id = any(:thread_ids::text[])
)

DELETE FROM lg_blobs
WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND thread_id = any(:thread_ids::text[]);

-- name: langgraph.delete_runs :many
-- Delete the checkpoints (and their writes) made by the given runs; returns the threads touched.
WITH gone AS (
    DELETE FROM lg_checkpoints
    WHERE
        tenant_id = (SELECT toolkit_tenant_or_default())
        AND metadata ? 'run_id' AND metadata ->> 'run_id' = any(:run_ids::text[])
    RETURNING tenant_id, thread_id, checkpoint_ns, checkpoint_id
),

writes_gone AS (
    DELETE FROM lg_writes AS w
    USING gone
    WHERE
        w.tenant_id = gone.tenant_id
        AND w.thread_id = gone.thread_id AND w.checkpoint_ns = gone.checkpoint_ns
        AND w.checkpoint_id = gone.checkpoint_id
)

SELECT gone.thread_id, count(*)::integer AS checkpoints
FROM gone
GROUP BY gone.thread_id;

-- name: langgraph.keep_last :many
-- Delete all but the newest :keep checkpoints per namespace of the threads (all: NULL) but :skip.
WITH ranked AS (
    SELECT
        tenant_id, thread_id, checkpoint_ns, checkpoint_id,
        row_number() OVER (
            PARTITION BY thread_id, checkpoint_ns ORDER BY checkpoint_id DESC
        ) AS position
    FROM lg_checkpoints
    WHERE
        tenant_id = (SELECT toolkit_tenant_or_default())
        AND (:thread_ids::text[] IS NULL OR thread_id = any(:thread_ids::text[]))
        AND NOT thread_id = any(:skip::text[])
),

gone AS (
    DELETE FROM lg_checkpoints AS c
    USING ranked AS r
    WHERE
        r.position > :keep
        AND c.tenant_id = r.tenant_id
        AND c.thread_id = r.thread_id AND c.checkpoint_ns = r.checkpoint_ns
        AND c.checkpoint_id = r.checkpoint_id
    RETURNING c.tenant_id, c.thread_id, c.checkpoint_ns, c.checkpoint_id
),

writes_gone AS (
    DELETE FROM lg_writes AS w
    USING gone
    WHERE
        w.tenant_id = gone.tenant_id
        AND w.thread_id = gone.thread_id AND w.checkpoint_ns = gone.checkpoint_ns
        AND w.checkpoint_id = gone.checkpoint_id
)

SELECT gone.thread_id, count(*)::integer AS checkpoints
FROM gone
GROUP BY gone.thread_id;

-- name: langgraph.delta_threads :many
-- The threads (of :thread_ids, or all) whose graphs use LangGraph's DeltaChannel.
SELECT DISTINCT thread_id
FROM lg_checkpoints
WHERE
    tenant_id = (SELECT toolkit_tenant_or_default())
    AND metadata ? 'counters_since_delta_snapshot'
    AND (:thread_ids::text[] IS NULL OR thread_id = any(:thread_ids::text[]));

-- name: langgraph.delete_idle_threads :many
-- Delete the threads whose newest checkpoint is older than :idle_for; returns them.
WITH idle AS (
    SELECT tenant_id, thread_id, count(*)::integer AS checkpoints
    FROM lg_checkpoints
    WHERE tenant_id = (SELECT toolkit_tenant_or_default())
    GROUP BY tenant_id, thread_id
    HAVING max(created_at) < now() - :idle_for::interval
),

checkpoints_gone AS (
    DELETE FROM lg_checkpoints AS c USING idle
    WHERE c.tenant_id = idle.tenant_id AND c.thread_id = idle.thread_id
),

writes_gone AS (
    DELETE FROM lg_writes AS w USING idle
    WHERE w.tenant_id = idle.tenant_id AND w.thread_id = idle.thread_id
),

blobs_gone AS (
    DELETE FROM lg_blobs AS b USING idle
    WHERE b.tenant_id = idle.tenant_id AND b.thread_id = idle.thread_id
)

SELECT idle.thread_id, idle.checkpoints FROM idle;

-- name: langgraph.collect_blobs :exec
-- Delete the values of the threads that no checkpoint reads any more (directly or as a delta base).
WITH RECURSIVE live AS (
    SELECT tenant_id, thread_id, checkpoint_ns, checkpoint
    FROM lg_checkpoints
    WHERE tenant_id = (SELECT toolkit_tenant_or_default()) AND thread_id = any(:thread_ids::text[])
),

needed AS (
    SELECT DISTINCT live.tenant_id, live.thread_id, live.checkpoint_ns, v.channel, v.version
    FROM live
    CROSS JOIN
        LATERAL
        jsonb_each_text(live.checkpoint -> 'channel_versions') AS v (channel, version)
    UNION
    SELECT b.tenant_id, b.thread_id, b.checkpoint_ns, b.channel, b.base_version
    FROM needed AS n
    INNER JOIN lg_blobs AS b
        ON
            n.tenant_id = b.tenant_id
            AND n.thread_id = b.thread_id AND n.checkpoint_ns = b.checkpoint_ns
            AND n.channel = b.channel AND n.version = b.version
    WHERE b.base_version IS NOT NULL
)

DELETE FROM lg_blobs AS b
WHERE
    b.tenant_id = (SELECT toolkit_tenant_or_default())
    AND b.thread_id = any(:thread_ids::text[])
    AND NOT EXISTS (
        SELECT 1 FROM needed AS n
        WHERE
            n.tenant_id = b.tenant_id
            AND n.thread_id = b.thread_id AND n.checkpoint_ns = b.checkpoint_ns
            AND n.channel = b.channel AND n.version = b.version
    );

-- name: langgraph.copy_thread :exec
-- Copy every checkpoint, value and write of thread :source to thread :target, in the same tenant.
WITH checkpoints_copied AS (
    INSERT INTO lg_checkpoints (
        thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata
    )
    SELECT
        :target::text, s.checkpoint_ns, s.checkpoint_id, s.parent_checkpoint_id, s.checkpoint,
        s.metadata
    FROM lg_checkpoints AS s
    WHERE
        s.tenant_id = (SELECT toolkit_tenant_or_default()) AND s.thread_id = :source::text
        AND NOT EXISTS (
            SELECT FROM lg_checkpoints AS t
            WHERE
                t.tenant_id = s.tenant_id AND t.thread_id = :target::text  -- noqa: RF02
                AND t.checkpoint_ns = s.checkpoint_ns AND t.checkpoint_id = s.checkpoint_id
        )
    ON CONFLICT DO NOTHING
),

writes_copied AS (
    INSERT INTO lg_writes (
        thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
    )
    SELECT
        :target::text, s.checkpoint_ns, s.checkpoint_id, s.task_id, s.task_path, s.idx, s.channel,
        s.type, s.blob
    FROM lg_writes AS s
    WHERE
        s.tenant_id = (SELECT toolkit_tenant_or_default()) AND s.thread_id = :source::text
        AND NOT EXISTS (
            SELECT FROM lg_writes AS t
            WHERE
                t.tenant_id = s.tenant_id AND t.thread_id = :target::text  -- noqa: RF02
                AND t.checkpoint_ns = s.checkpoint_ns AND t.checkpoint_id = s.checkpoint_id
                AND t.task_id = s.task_id AND t.idx = s.idx
        )
    ON CONFLICT DO NOTHING
)

INSERT INTO lg_blobs (
    thread_id, checkpoint_ns, channel, version, type, base_version, item_count, blob
)
SELECT
    :target::text, s.checkpoint_ns, s.channel, s.version, s.type, s.base_version, s.item_count,
    s.blob
FROM lg_blobs AS s
WHERE
    s.tenant_id = (SELECT toolkit_tenant_or_default()) AND s.thread_id = :source::text
    AND NOT EXISTS (
        SELECT FROM lg_blobs AS t
        WHERE
            t.tenant_id = s.tenant_id AND t.thread_id = :target::text  -- noqa: RF02
            AND t.checkpoint_ns = s.checkpoint_ns AND t.channel = s.channel
            AND t.version = s.version
    )
ON CONFLICT DO NOTHING;

-- name: langgraph.tables_ready :scalar
-- Whether migration 0006 made the LangGraph tables in this database.
SELECT
    to_regclass('lg_checkpoints') IS NOT NULL
    AND to_regclass('lg_blobs') IS NOT NULL
    AND to_regclass('lg_writes') IS NOT NULL;
