"""dart preparer: python -m data.dart.prepare."""
