"""What a person or a log collector reads: tables (rich, plain, markdown), progress, JSON logs,
plots and HTML reports."""
