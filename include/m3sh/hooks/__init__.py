"""One hook module per external system. Operators never build URLs; hooks own clients, retries and paging."""
