"""The network and its inference: backbones, decoders, beam search, the captioner, the feature cache. Imports torch
(with core.train, the only packages that may, at module level)."""
