"""Kafka: embedded broker lifecycle, replay producer, and the turbofan monitor."""
