"""Authorization: Casbin policies that security teams own, validated, tested and hot-reloaded."""
