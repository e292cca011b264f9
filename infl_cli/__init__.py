"""infl: influence functions for multinomial logistic regression, checked by retraining."""

__version__ = "0.1.0"
