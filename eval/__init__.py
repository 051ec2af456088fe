"""ME-VQA / ME-LVQA evaluation: scoring (`mellm eval score`) and the endpoint runner (`mellm eval run`)."""
