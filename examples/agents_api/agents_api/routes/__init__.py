"""The routes, one router per resource."""
