"""Sans-IO SyncML DM session engine: authentication, statuses, command flow."""
