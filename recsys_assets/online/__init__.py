"""Online evaluation: serving KPIs, replay of served lists against later ratings, A/B statistics."""
