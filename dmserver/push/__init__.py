"""Package 0 notifications, WAP Push over SMS and SMS gateway adapters."""
