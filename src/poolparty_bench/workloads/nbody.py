"""Five-body (Sun + the four gas giants) orbital simulation, on SHARED state.

The system's state lives at module level and every task advances it in
place.  When a thread pool runs several tasks at once, those threads all
integrate the same bodies concurrently, racing on the same lists of floats.
That is deliberate: it is what makes this workload differ from
``nbody_no_share``.  (In a process or subinterpreter pool each worker has its
own copy of this module, so nothing is actually shared there.)

Units: distances in AU, time in years, so G * M_sun = 4 * pi**2.
Integrator: symplectic (semi-implicit) Euler over all pairs with dt = 0.01.
"""

import math

NAME = "nbody"
DESCRIPTION = "five-body simulation, 10 x 20000 steps per task, on shared module state"

N_TASKS = 64
LOOPS = 10
BASE_STEPS = 20_000
DT = 0.01

PI = math.pi
SOLAR_MASS = 4.0 * PI * PI
DAYS_PER_YEAR = 365.24

# Total energy of the initial system after the Sun's momentum is offset (the
# value printed by every implementation of the classic benchmark).
EXPECTED_ENERGY = -0.169075164

# Energy tolerance (absolute) for check(), from measurement (CPython 3.13,
# x86-64).
#
# Without races -- tasks applied one after another to the state, as in the
# sequential mode and in every subinterpreter or process worker (each owns
# its own copy of this module) -- the integrator's energy error is bounded:
# it oscillates between -2.5e-5 and +7.4e-5 around EXPECTED_ENERGY, with the
# same extremes over 3 and over 13 million steps (a whole 64-task run is 12.8
# million): symplectic Euler has no secular drift.  1e-4 bounds that.
#
# Why a race is caught: threads running tasks at once race on the shared
# lists, and that really breaks the physics.  A thread can be switched out
# between reading a pair's positions and applying the velocity kick computed
# from them (the math.sqrt call is a switch point); when it resumes, 5 ms
# (~1,400 steps) later under the GIL, it applies a kick computed for a stale
# configuration, changing the energy by up to ~3e-3 at once (Jupiter: mass
# 0.038, speed 2.8 AU/yr, kick 0.015 AU/yr).  Measured with
# multiprocessing.pool.ThreadPool on GIL builds, max |E - EXPECTED_ENERGY|
# was 2e-3 to 4.7e-2 over 64 tasks at scale 0.1 (4 threads, 8 runs) and
# 2.7e-2 at scale 1 (16 threads): 20 to 470 times the tolerance.  Free
# threading adds lost read-modify-write updates (not measured here).  So a
# racing run is expected to FAIL this check (a very short one might get
# lucky), and that is the correct verdict: its energies are wrong.  Any
# corruption of results or state is caught too: NaN/inf, zeros, another
# task's or workload's values, truncated lists, or a broken body (even
# Neptune's kinetic energy, ~1.3e-3, is 13 times the tolerance).
# max_energy_error() measures how much damage a run did.
TOLERANCE = 1e-4

# Published initial conditions (heliocentric, J2000-ish), positions in AU and
# velocities in AU/day (converted to AU/year below), masses in solar masses.
_INITIAL = (
    ("sun", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 1.0),
    (
        "jupiter",
        (4.84143144246472090e00, -1.16032004402742839e00, -1.03622044471123109e-01),
        (1.66007664274403694e-03, 7.69901118419740425e-03, -6.90460016972063023e-05),
        9.54791938424326609e-04,
    ),
    (
        "saturn",
        (8.34336671824457987e00, 4.12479856412430479e00, -4.03523417114321381e-01),
        (-2.76742510726862411e-03, 4.99852801234917238e-03, 2.30417297573763929e-05),
        2.85885980666130812e-04,
    ),
    (
        "uranus",
        (1.28943695621391310e01, -1.51111514016986312e01, -2.23307578892655734e-01),
        (2.96460137564761618e-03, 2.37847173959480950e-03, -2.96589568540237556e-05),
        4.36624404335156298e-05,
    ),
    (
        "neptune",
        (1.53796971148509165e01, -2.59193146099879641e01, 1.79258772950371181e-01),
        (2.68067772490389322e-03, 1.62824170038242295e-03, -9.51592254519715870e-05),
        5.15138902046611451e-05,
    ),
)


def make_system():
    """A fresh system: a list of ``[position, velocity, mass]`` bodies.

    Positions and velocities are mutable 3-element lists, updated in place.
    The Sun's velocity is set so the total momentum is zero.
    """
    bodies = []
    for _name, pos, vel, mass in _INITIAL:
        bodies.append(
            [list(pos), [v * DAYS_PER_YEAR for v in vel], mass * SOLAR_MASS]
        )
    px = py = pz = 0.0
    for _pos, vel, mass in bodies:
        px += vel[0] * mass
        py += vel[1] * mass
        pz += vel[2] * mass
    sun_vel = bodies[0][1]
    sun_vel[0] = -px / SOLAR_MASS
    sun_vel[1] = -py / SOLAR_MASS
    sun_vel[2] = -pz / SOLAR_MASS
    return bodies


def pairs_of(bodies):
    """Every unordered pair of bodies, as (body_i, body_j) with i < j."""
    out = []
    for i in range(len(bodies)):
        for j in range(i + 1, len(bodies)):
            out.append((bodies[i], bodies[j]))
    return out


def advance(bodies, pairs, dt, steps):
    """Symplectic Euler: kick all velocities from pairwise gravity, then drift."""
    for _ in range(steps):
        for (p1, v1, m1), (p2, v2, m2) in pairs:
            dx = p1[0] - p2[0]
            dy = p1[1] - p2[1]
            dz = p1[2] - p2[2]
            d2 = dx * dx + dy * dy + dz * dz
            mag = dt / (d2 * math.sqrt(d2))
            f1 = m1 * mag
            f2 = m2 * mag
            v1[0] -= dx * f2
            v1[1] -= dy * f2
            v1[2] -= dz * f2
            v2[0] += dx * f1
            v2[1] += dy * f1
            v2[2] += dz * f1
        for pos, vel, _mass in bodies:
            pos[0] += dt * vel[0]
            pos[1] += dt * vel[1]
            pos[2] += dt * vel[2]


def energy(bodies, pairs):
    """Total (kinetic + potential) energy of the system."""
    e = 0.0
    for (p1, _v1, m1), (p2, _v2, m2) in pairs:
        dx = p1[0] - p2[0]
        dy = p1[1] - p2[1]
        dz = p1[2] - p2[2]
        e -= m1 * m2 / math.sqrt(dx * dx + dy * dy + dz * dz)
    for _pos, vel, mass in bodies:
        e += 0.5 * mass * (vel[0] * vel[0] + vel[1] * vel[1] + vel[2] * vel[2])
    return e


def simulate(bodies, steps, pairs=None, loops=LOOPS):
    """Run ``loops`` loops of ``steps`` steps; energies before/after each loop."""
    if pairs is None:
        pairs = pairs_of(bodies)
    energies = []
    for _ in range(loops):
        energies.append(energy(bodies, pairs))
        advance(bodies, pairs, DT, steps)
        energies.append(energy(bodies, pairs))
    return energies


def steps_for_scale(scale: float) -> int:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    return max(1, round(BASE_STEPS * scale))


# The shared, module-level state every task of this module mutates in place.
BODIES = make_system()
PAIRS = pairs_of(BODIES)


def reset():
    """Put the shared state back to its initial values (in place)."""
    fresh = make_system()
    for body, new in zip(BODIES, fresh):
        body[0][:] = new[0]
        body[1][:] = new[1]


def inputs(scale: float) -> list:
    return [steps_for_scale(scale)] * N_TASKS


def task(arg):
    # Integrates the module-level BODIES in place, unsynchronised, on purpose.
    return simulate(BODIES, arg, PAIRS)


def energies_ok(energies, loops=LOOPS, tolerance=TOLERANCE) -> bool:
    if not isinstance(energies, list) or len(energies) != 2 * loops:
        return False
    for e in energies:
        if type(e) is not float or not math.isfinite(e):
            return False
        if abs(e - EXPECTED_ENERGY) > tolerance:
            return False
    return True


def max_energy_error(results) -> float:
    """Largest |E - EXPECTED_ENERGY| over a run's results (race damage)."""
    return max(abs(e - EXPECTED_ENERGY) for r in results for e in r)


def check(inputs: list, results: list, tolerance: float = TOLERANCE) -> bool:
    # The shared state keeps evolving from task to task (and, in a thread
    # pool, tasks interleave), so no task has a fixed expected trajectory; but
    # energy is conserved, so every reported energy must stay near the
    # system's known total (see TOLERANCE for how near).
    if len(results) != len(inputs):
        return False
    return all(energies_ok(r, tolerance=tolerance) for r in results)
