"""`latchkey`: the operator's command line, composed above the services.

Shipped in the image (probes, migrations, exports); nothing here runs inside a service.
"""
