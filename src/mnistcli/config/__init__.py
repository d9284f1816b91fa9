"""The experiment config: the typed schema, loading (defaults < YAML < --set), validation, the JSON Schema."""
