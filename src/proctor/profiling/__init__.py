"""Where the time goes: the run's events, their statistics, and the reports and plots built from them."""
