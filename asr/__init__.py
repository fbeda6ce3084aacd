"""asr: attention-based encoder-decoder speech recognition.

``from asr import Speech2Text`` is the Python inference API (:mod:`asr.inference`); it is imported on first use,
so ``import asr`` stays light.
"""

__all__ = ["Speech2Text", "Result"]


def __getattr__(name: str):
    if name in __all__:
        from asr import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'asr' has no attribute {name!r}")
