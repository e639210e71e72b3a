"""`tunelab ui`: a local web app over the workspace, evaluation and serve APIs."""
