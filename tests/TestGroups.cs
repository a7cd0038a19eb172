using Weft.Harness;

namespace Weft.Tests;

/// <summary>
/// The three test groups a developer can run alone (`bash tests/run.sh unit|kernel|e2e`):
/// <code>
///  unit    no trait        no root, seconds: parsers, policy, HTTP/2 and TLS on loopback, the proxy core
///  kernel  Group=kernel    root: real eBPF programs in the real kernel, in a cgroup and namespaces of the test's own
///  e2e     Group=e2e       root: clusters of network namespaces with real agent processes
/// </code>
/// Kernel and end-to-end tests are <see cref="PrivilegedFactAttribute"/>s: as an ordinary user they skip with
/// the reason, and with CI=true they run and fail rather than skip.
/// </summary>
internal static class TestGroups
{
    public const string Trait = "Group";
    public const string Kernel = "kernel";
    public const string EndToEnd = "e2e";
}

/// <summary>Tests that need root (eBPF, network namespaces, cgroups).</summary>
internal static class Privileged
{
    public static bool InCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);

    /// <summary>Why a privileged test cannot run here, or null when it can (root), or must (CI=true: it then fails).</summary>
    public static string? SkipReason =>
        Environment.IsPrivilegedProcess || InCi
            ? null
            : "needs root (eBPF, network namespaces, cgroups): run as root, or run only the unit group (bash tests/run.sh unit)";

    public static void Require()
    {
        if (!Environment.IsPrivilegedProcess)
        {
            throw new InvalidOperationException("this test needs root (eBPF, network namespaces, cgroups); run it as root");
        }
    }
}

/// <summary>A fact that needs root: skipped with the reason for an ordinary user, never skipped in CI.</summary>
public sealed class PrivilegedFactAttribute : FactAttribute
{
    public PrivilegedFactAttribute()
    {
        if (Privileged.SkipReason is { } reason)
        {
            Skip = reason;
        }
    }
}

/// <summary>A theory that needs root: skipped with the reason for an ordinary user, never skipped in CI.</summary>
public sealed class PrivilegedTheoryAttribute : TheoryAttribute
{
    public PrivilegedTheoryAttribute()
    {
        if (Privileged.SkipReason is { } reason)
        {
            Skip = reason;
        }
    }
}

/// <summary>
/// A fact about the shipped agent binary, which only the kernel and end-to-end groups' run publishes: skipped with the
/// reason as an ordinary user or when <c>WEFT_AGENT_EXECUTABLE</c> is not set (a plain <c>dotnet test</c>), never
/// skipped in CI, where <c>tests/run.sh</c> always sets it.
/// </summary>
public sealed class AgentBinaryFactAttribute : FactAttribute
{
    public AgentBinaryFactAttribute()
    {
        if (Privileged.SkipReason is { } reason)
        {
            Skip = reason;
        }
        else if (!Privileged.InCi && Environment.GetEnvironmentVariable(WeftExecutable.AgentVariable) is not { Length: > 0 })
        {
            Skip = $"{WeftExecutable.AgentVariable} is not set: run through tests/run.sh (kernel, e2e or all), which publishes the NativeAOT agent";
        }
    }
}
