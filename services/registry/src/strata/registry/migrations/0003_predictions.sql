-- Predictions the gateway served, from the prediction log (strata.predictions):
-- the anchor a lineage query starts from and what a skew report reads. Kept for
-- STRATA_REGISTRY_PREDICTIONS_RETENTION after they were served, then pruned.
CREATE TABLE predictions (
    prediction_id uuid PRIMARY KEY,
    model_name text NOT NULL,
    model_version bigint NOT NULL,
    alias text NOT NULL,
    entity_key text NOT NULL,
    request_id text NOT NULL,
    served_at timestamptz NOT NULL,
    -- Reference -> FeatureValue, as protobuf JSON.
    features jsonb NOT NULL,
    -- Output name -> Value, as protobuf JSON.
    outputs jsonb NOT NULL,
    -- [FeatureViewRef, ...] as protobuf JSON.
    feature_views jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
-- ListPredictions pages a model's predictions in served order.
CREATE INDEX predictions_by_model ON predictions (model_name, served_at, prediction_id);
-- Retention deletes by age.
CREATE INDEX predictions_by_served_at ON predictions (served_at);
