"""Predictors of a candidate's accuracy and cost, fitted on and checked against measurements
(issue #30): the OFA/HAT way to judge candidates when measuring each one costs too much."""
