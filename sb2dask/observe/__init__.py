"""An observed spectrum made ready for the networks: the pure core shared by the training-set
factory and inference, so both see spectra prepared the same way.

- :mod:`.preprocess`: missing-pixel fill, resampling onto the model grid (optionally into a moving
  frame), quality flags, S/N estimate;
- :mod:`.rv_bulk`: the bulk radial velocity by cross-correlation with a template bank;
- :mod:`.flags`: the :class:`~.flags.QualityFlag` bits.
"""
