"""The one fixed order of the seven FER-2013 emotions: index in ``CLASSES`` = label.

Every part of the project (loader, model output, metrics, the web demo) uses this
tuple and nothing else to turn a label into a name. Projects that took the label
from the order in which folders were listed (``os.listdir`` order is arbitrary,
and a missing folder shifts every label after it), or that hard-coded a second
order somewhere else (the CSV's ``Angry, Disgust, Fear, Happy, Sad, Surprise,
Neutral`` next to the folders' alphabetical one), trained fine and then showed
the wrong emotion. So the order is written down once, here, alphabetical like the
image-folder layout, and the CSV's codes are translated into it on loading.
"""
from __future__ import annotations

import numpy as np

CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
NUM_CLASSES: int = len(CLASSES)

# The ``emotion`` column of the original fer2013.csv (Kaggle / ICML 2013):
# 0=Angry, 1=Disgust, 2=Fear, 3=Happy, 4=Sad, 5=Surprise, 6=Neutral.
# Note that it differs from CLASSES at 4, 5 and 6.
CSV_CODES: dict[int, str] = {0: "angry", 1: "disgust", 2: "fear", 3: "happy",
                             4: "sad", 5: "surprise", 6: "neutral"}

# CSV code -> index in CLASSES, as an array so a whole column maps at once:
# ``labels = CSV_TO_INDEX[emotion_codes]``.
CSV_TO_INDEX: np.ndarray = np.array([CLASSES.index(CSV_CODES[code]) for code in range(NUM_CLASSES)],
                                    dtype=np.int64)
CSV_TO_INDEX.setflags(write=False)

__all__ = ["CLASSES", "NUM_CLASSES", "CSV_CODES", "CSV_TO_INDEX"]
