"""Models of fastreid_ext: CLIP image / text encoders (:mod:`fastreid_ext.modeling.clip`)."""
