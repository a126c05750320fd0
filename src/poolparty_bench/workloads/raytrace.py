"""A small object-oriented ray tracer (the scene of the original study).

Pure Python, one class per concept (vectors, rays, shapes, surfaces, scene,
canvas), so the hot path is dominated by object creation, method calls and
attribute access: that is what this workload measures.  Nothing is shared
between tasks: every task builds its own scene and canvas.
"""

import math

NAME = "raytrace"
DESCRIPTION = "ray-trace a 100x100 scene (7 spheres, checkerboard, 2 lights) per task"

N_TASKS = 64
BASE_SIZE = 100
MIN_SIZE = 8
MAX_DEPTH = 3
EPSILON = 1e-5
MIN_COLOURS = 4


class Vector:
    """A 3-vector, used for points, directions and RGB colours alike."""

    def __init__(self, x, y, z):
        self.x = x
        self.y = y
        self.z = z

    def __repr__(self):
        return f"Vector({self.x!r}, {self.y!r}, {self.z!r})"

    def __add__(self, other):
        return Vector(self.x + other.x, self.y + other.y, self.z + other.z)

    def __sub__(self, other):
        return Vector(self.x - other.x, self.y - other.y, self.z - other.z)

    def __neg__(self):
        return Vector(-self.x, -self.y, -self.z)

    def scaled(self, factor):
        return Vector(self.x * factor, self.y * factor, self.z * factor)

    def times(self, other):
        """Component-wise product (used to tint colours)."""
        return Vector(self.x * other.x, self.y * other.y, self.z * other.z)

    def dot(self, other):
        return self.x * other.x + self.y * other.y + self.z * other.z

    def cross(self, other):
        return Vector(
            self.y * other.z - self.z * other.y,
            self.z * other.x - self.x * other.z,
            self.x * other.y - self.y * other.x,
        )

    def length(self):
        return math.sqrt(self.dot(self))

    def unit(self):
        n = self.length()
        if n == 0.0:
            raise ZeroDivisionError("cannot normalise a zero vector")
        return self.scaled(1.0 / n)

    def mirrored(self, normal):
        """This direction reflected off a surface with unit ``normal``."""
        return self - normal.scaled(2.0 * self.dot(normal))


ORIGIN = Vector(0.0, 0.0, 0.0)
UP = Vector(0.0, 1.0, 0.0)
BLACK = Vector(0.0, 0.0, 0.0)
WHITE = Vector(1.0, 1.0, 1.0)


class Ray:
    def __init__(self, origin, direction):
        self.origin = origin
        self.direction = direction.unit()

    def at(self, t):
        return self.origin + self.direction.scaled(t)


class Sphere:
    def __init__(self, centre, radius):
        self.centre = centre
        self.radius = radius

    def hit_distance(self, ray):
        """Smallest t > EPSILON where the ray meets the sphere, or None."""
        to_origin = ray.origin - self.centre
        b = to_origin.dot(ray.direction)
        c = to_origin.dot(to_origin) - self.radius * self.radius
        disc = b * b - c
        if disc < 0.0:
            return None
        root = math.sqrt(disc)
        t = -b - root
        if t > EPSILON:
            return t
        t = -b + root
        if t > EPSILON:
            return t
        return None

    def normal_at(self, point):
        return (point - self.centre).unit()


class Halfspace:
    """Everything below a plane; only its boundary plane is ever visible."""

    def __init__(self, point, normal):
        self.point = point
        self.normal = normal.unit()

    def hit_distance(self, ray):
        facing = ray.direction.dot(self.normal)
        if facing == 0.0:
            return None
        t = (self.point - ray.origin).dot(self.normal) / facing
        if t > EPSILON:
            return t
        return None

    def normal_at(self, point):
        return self.normal


class Surface:
    """Ambient + Lambert diffuse + Phong highlight + mirror reflection."""

    def __init__(self, colour=WHITE, specular=0.2, diffuse=0.6, ambient=None,
                 shininess=40.0):
        self.colour = colour
        self.specular = specular
        self.diffuse = diffuse
        self.ambient = 1.0 - specular - diffuse if ambient is None else ambient
        self.shininess = shininess

    def colour_at_point(self, point):
        return self.colour

    def shade(self, scene, ray, point, normal, depth):
        base = self.colour_at_point(point)
        result = base.scaled(self.ambient)

        # Mirror reflection, recursively traced up to MAX_DEPTH bounces.
        if self.specular > 0.0 and depth < MAX_DEPTH:
            bounce = Ray(point, ray.direction.mirrored(normal))
            result = result + scene.trace(bounce, depth + 1).scaled(self.specular)

        # Direct light from every light source that is not in shadow.
        lambert = 0.0
        highlight = 0.0
        for light in scene.lights_seen_from(point):
            to_light = (light - point).unit()
            facing = to_light.dot(normal)
            if facing <= 0.0:
                continue
            lambert += facing
            half = (to_light - ray.direction).unit()
            h = half.dot(normal)
            if h > 0.0:
                highlight += h ** self.shininess
        if lambert > 0.0:
            result = result + base.scaled(self.diffuse * min(1.0, lambert))
        if highlight > 0.0:
            result = result + WHITE.scaled(self.specular * highlight)
        return result


class CheckerboardSurface(Surface):
    def __init__(self, colour=WHITE, other_colour=BLACK, check_size=1.0, **kw):
        super().__init__(colour=colour, **kw)
        self.other_colour = other_colour
        self.check_size = check_size

    def colour_at_point(self, point):
        # A tiny bias keeps points that lie exactly on a cell boundary (the
        # plane itself, up to rounding) on one consistent side.
        s = self.check_size
        cell = (
            math.floor(point.x / s + 1e-6)
            + math.floor(point.y / s + 1e-6)
            + math.floor(point.z / s + 1e-6)
        )
        return self.colour if cell % 2 == 0 else self.other_colour


class Canvas:
    """An RGB image with 8 bits per channel, row 0 at the top."""

    def __init__(self, width, height):
        self.width = width
        self.height = height
        self.pixels = bytearray(3 * width * height)

    @staticmethod
    def _channel(value):
        if value <= 0.0:
            return 0
        if value >= 1.0:
            return 255
        return int(value * 255.0 + 0.5)

    def plot(self, x, y, colour):
        i = 3 * (y * self.width + x)
        self.pixels[i] = self._channel(colour.x)
        self.pixels[i + 1] = self._channel(colour.y)
        self.pixels[i + 2] = self._channel(colour.z)

    def to_bytes(self):
        return bytes(self.pixels)


class Scene:
    def __init__(self):
        self.objects = []
        self.lights = []
        self.camera = Vector(0.0, 0.0, 10.0)
        self.target = ORIGIN
        self.field_of_view = 45.0
        self.background = BLACK

    def add_object(self, shape, surface):
        self.objects.append((shape, surface))

    def add_light(self, position):
        self.lights.append(position)

    def look(self, camera, target, field_of_view=45.0):
        self.camera = camera
        self.target = target
        self.field_of_view = field_of_view

    def nearest_hit(self, ray):
        best_t = None
        best = None
        for shape, surface in self.objects:
            t = shape.hit_distance(ray)
            if t is not None and (best_t is None or t < best_t):
                best_t = t
                best = (shape, surface)
        return best_t, best

    def lights_seen_from(self, point):
        visible = []
        for light in self.lights:
            to_light = light - point
            distance = to_light.length()
            t, _ = self.nearest_hit(Ray(point, to_light))
            if t is None or t > distance:
                visible.append(light)
        return visible

    def trace(self, ray, depth=0):
        t, hit = self.nearest_hit(ray)
        if hit is None:
            return self.background
        shape, surface = hit
        point = ray.at(t)
        return surface.shade(self, ray, point, shape.normal_at(point), depth)

    def render(self, canvas):
        forward = (self.target - self.camera).unit()
        right = forward.cross(UP).unit()
        up = right.cross(forward).unit()
        half_width = math.tan(math.radians(self.field_of_view) / 2.0)
        half_height = half_width * canvas.height / canvas.width
        step_x = 2.0 * half_width / max(1, canvas.width - 1)
        step_y = 2.0 * half_height / max(1, canvas.height - 1)
        for row in range(canvas.height):
            # Row 0 is the top of the image.
            up_part = up.scaled(half_height - row * step_y)
            for col in range(canvas.width):
                right_part = right.scaled(col * step_x - half_width)
                ray = Ray(self.camera, forward + right_part + up_part)
                canvas.plot(col, row, self.trace(ray))


def build_scene():
    scene = Scene()
    scene.look(Vector(0.0, 1.8, 10.0), Vector(0.0, 3.0, 0.0), 45.0)
    scene.add_light(Vector(30.0, 30.0, 10.0))
    scene.add_light(Vector(-10.0, 100.0, 30.0))
    scene.add_object(Sphere(Vector(1.0, 3.0, -10.0), 2.0),
                     Surface(colour=Vector(1.0, 1.0, 0.0)))
    for i in range(6):
        scene.add_object(
            Sphere(Vector(-3.0 - i * 0.4, 2.3, -5.0), 0.4),
            Surface(colour=Vector(i / 6.0, 1.0 - i / 6.0, 0.5)),
        )
    scene.add_object(Halfspace(ORIGIN, UP), CheckerboardSurface(check_size=2.0))
    return scene


def render(size):
    canvas = Canvas(size, size)
    build_scene().render(canvas)
    return canvas.to_bytes()


def size_for_scale(scale: float) -> int:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    return max(MIN_SIZE, round(BASE_SIZE * math.sqrt(scale)))


def inputs(scale: float) -> list:
    return [size_for_scale(scale)] * N_TASKS


def task(arg):
    return render(arg)


def distinct_colours(image: bytes) -> int:
    return len({image[i:i + 3] for i in range(0, len(image), 3)})


def check(inputs: list, results: list) -> bool:
    if len(results) != len(inputs):
        return False
    reference = {}
    for size in set(inputs):
        image = render(size)
        # Guard against a renderer that draws (almost) nothing: even the
        # smallest (8x8) image shows 6 colours, 100x100 over 600.
        if len(image) != 3 * size * size or distinct_colours(image) < MIN_COLOURS:
            return False
        reference[size] = image
    return all(
        type(r) is bytes and r == reference[size] for size, r in zip(inputs, results)
    )
