"""Captioning as a user meets it: photo libraries, metadata, tags, confidence, the caption worker and its client,
`python -m core.caption`. Torch-free at import (the model runs in core.nn, imported when a command needs it)."""
