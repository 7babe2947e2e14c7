"""webnlg preparer: python -m data.webnlg.prepare."""
