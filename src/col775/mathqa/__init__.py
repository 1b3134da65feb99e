"""MathQA: turn a word problem into an executable linear_formula program (assignment 1, part 2)."""
