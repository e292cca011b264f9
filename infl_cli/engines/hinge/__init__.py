"""The linear SVM of the paper's Figure 3 (certified by its exact duality gap) and the
smooth-hinge model, with their certified leave-one-out retraining."""
