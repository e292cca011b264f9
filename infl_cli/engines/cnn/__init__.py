"""Koh & Liang's All-CNN-C (Figure 2, right): the network as a pure function of a flat
parameter vector, its derivatives by autodiff, and the exact and paper protocols."""
