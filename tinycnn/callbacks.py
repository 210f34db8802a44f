"""Callbacks for ``Sequential.fit``, with Keras' names.

A callback is any object with some of ``on_epoch_begin(epoch)``,
``on_train_batch_begin(step)``, ``on_test_begin()``, ``on_test_end()`` and
``on_epoch_end(epoch, logs)``; ``fit`` calls those it has, in the order the callbacks
are listed.
"""
from __future__ import annotations


class SwapEMAWeights:
    """Validate (and, with ``swap_on_epoch``, end each epoch) with the optimiser's moving
    average of the weights, as ``keras.callbacks.SwapEMAWeights``.

    The optimiser must keep one (``use_ema=True``). Before ``fit`` evaluates on its
    validation data the averaged weights go into the model, and the trained ones come
    back after, so ``val_loss`` and ``val_accuracy`` are the averaged model's while
    training goes on from the trained weights. With ``swap_on_epoch``, the averaged
    weights stay in the model through ``on_epoch_end`` (list this callback first, and a
    later one that saves the model saves them) and the trained ones come back at the
    next ``on_epoch_begin``, or at the end of ``fit`` (``on_train_end``: call it when
    ``fit`` is stopped some other way)."""

    def __init__(self, optimizer, swap_on_epoch=False):
        if not getattr(optimizer, "use_ema", False):
            raise ValueError(f"SwapEMAWeights: the optimiser ({type(optimizer).__name__}) keeps no moving "
                             f"average; make it with use_ema=True")
        self.optimizer, self.swap_on_epoch = optimizer, bool(swap_on_epoch)
        self.averaged_in_model = False

    def _swap(self, to_averaged):
        if self.averaged_in_model != to_averaged:
            self.optimizer.swap_ema_weights()
            self.averaged_in_model = to_averaged

    def on_epoch_begin(self, epoch):
        self._swap(False)

    def on_test_begin(self):
        self._swap(True)

    def on_test_end(self):
        if not self.swap_on_epoch:
            self._swap(False)

    def on_epoch_end(self, epoch, logs):
        if self.swap_on_epoch:
            self._swap(True)

    def on_train_end(self):
        self._swap(False)
