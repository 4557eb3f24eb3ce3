"""facexpr: change facial expressions in photos and videos while keeping identity.

Layers (data flows one way; lower layers never import upper ones):
face -> data -> models/losses -> training -> evaluation/pipeline -> cli/web.
"""

__version__ = "0.1.0"
