"""Answers to the chapters' exercises, one module a chapter: prose and the functions that compute the evidence."""
