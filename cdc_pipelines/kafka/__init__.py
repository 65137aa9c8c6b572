"""Kafka tools: consumer-lag sampling and evaluation, dead-letter-queue inspection."""
