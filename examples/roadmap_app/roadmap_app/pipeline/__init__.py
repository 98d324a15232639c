"""The roadmap pipeline as plain async functions: intent → curriculum → content, and the workflow."""
