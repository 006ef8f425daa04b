"""Deferrable m3sh sensors (see :mod:`m3sh.sensors.m3ter`)."""
