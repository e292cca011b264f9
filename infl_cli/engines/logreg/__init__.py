"""Multinomial logistic regression in closed form: training to a certified optimum, exact,
CG and LiSSA inverse-HVPs, scores, certified leave-one-out and subset retraining,
self-influence and the field's other estimators."""
