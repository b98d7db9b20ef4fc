"""Resources: provisioned databases, key-value stores, blob buckets and volumes.

Backends (``resources.backends``) talk to real servers; ``service`` holds the business rules
(status changes, windows, bindings); ``repository`` the queries; ``schemas`` the API shapes.
"""
