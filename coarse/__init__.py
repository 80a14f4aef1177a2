"""The coarse stage: a photo's face to morphable-model coefficients.

Detection and 68 landmarks (:mod:`coarse.detect`), the landmark fits (:mod:`coarse.fit`), the network frame
(:mod:`coarse.frame`), and the iterative network (:mod:`coarse.network`) run from a start by
:mod:`coarse.iterative`. Below both ``training`` (which trains the network) and ``reconstruct`` (the photo
application); above ``datagen``, ``render`` and ``morphable``.
"""
