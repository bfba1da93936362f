"""Draw the local stand-ins for the Phi-3 Cookbook's images (the originals are on the web).

    python examples/images/make_images.py

They let the examples run offline; pass the cookbook's URLs (the examples' defaults) or your
own files for real answers.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent


def revenue_chart() -> Image.Image:
    revenue = [0.8, 1.9, 2.9, 3.0, 6.7, 10.6, 15.0, 47.5]  # Nvidia data-centre revenue, $bn, FY2017-FY2024
    image = Image.new("RGB", (800, 450), "white")
    draw = ImageDraw.Draw(image)
    draw.text((20, 15), "Nvidia data center revenue (fiscal years 2017-2024, $ billions)", fill="black")
    for i, value in enumerate(revenue):
        left = 60 + i * 90
        top = 400 - int(value / 50 * 340)
        draw.rectangle([left, top, left + 60, 400], fill=(118, 185, 0))
        draw.text((left + 5, top - 15), f"{value:.1f}", fill="black")
        draw.text((left + 5, 410), f"FY{17 + i}", fill="black")
    return image


def book_cover() -> Image.Image:
    image = Image.new("RGB", (400, 600), "black")
    draw = ImageDraw.Draw(image)
    draw.rectangle([40, 40, 360, 560], outline="white", width=3)
    draw.text((150, 220), "ALONE", fill="white", font_size=48)
    draw.text((130, 500), "Morgan Maxwell", fill="white", font_size=24)
    return image


def team_photo(celebrating: bool) -> Image.Image:
    image = Image.new("RGB", (640, 360), (40, 120, 40) if celebrating else (200, 30, 40))
    draw = ImageDraw.Draw(image)
    for i in range(8):
        x = 40 + i * 72
        y = 150 - (40 if celebrating and i % 2 else 0)
        draw.ellipse([x, y, x + 40, y + 40], fill=(240, 200, 170))
        draw.rectangle([x, y + 40, x + 40, y + 130], fill="red" if not celebrating else "white")
    if not celebrating:
        draw.polygon([(300, 300), (340, 300), (330, 250), (310, 250)], fill="gold")  # a trophy
    return image


if __name__ == "__main__":
    revenue_chart().save(HERE / "chart.png")
    book_cover().save(HERE / "book_cover.png")
    team_photo(False).save(HERE / "team_trophies.jpg", quality=85)
    team_photo(True).save(HERE / "team_celebrating.webp", quality=85)
