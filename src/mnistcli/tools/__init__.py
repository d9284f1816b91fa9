"""Commands' library parts that read but never train: doctor, data audit, data show."""
