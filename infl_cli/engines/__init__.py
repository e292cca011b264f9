"""The model kinds behind one seam: the logistic model (:mod:`.logreg`), the SVM and the
smooth hinge (:mod:`.hinge`) and Koh's CNN (:mod:`.cnn`), each an engine that the stages call
through the same methods; their specs and policies (:mod:`.spec`) are torch-free."""
