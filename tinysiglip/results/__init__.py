"""Everything that reads the study database: the store, the report tables and the dashboards."""
