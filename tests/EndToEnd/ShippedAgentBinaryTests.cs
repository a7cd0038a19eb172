using System.Diagnostics;
using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// The binary the DaemonSet runs (<c>weft-agent</c> in the image: a NativeAOT publish with <c>-p:WeftEdge=false</c>),
/// which <c>tests/run.sh</c> publishes and names in <c>WEFT_AGENT_EXECUTABLE</c> so that every agent the kernel and
/// end-to-end groups start is that binary. These check that it is the build the image ships.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
public sealed class ShippedAgentBinaryTests
{
    private static string Binary => Environment.GetEnvironmentVariable(WeftExecutable.AgentVariable) is { Length: > 0 } file
        ? file
        : throw new InvalidOperationException($"{WeftExecutable.AgentVariable} is not set: tests/run.sh publishes the NativeAOT agent and sets it");

    [AgentBinaryFact]
    public void IsNativeCode_WithNoRuntimeOrAssembliesBesideIt()
    {
        var (output, code) = Run("version");

        Assert.Equal(0, code);
        Assert.StartsWith("weft ", output);
        // A NativeAOT binary is one ELF file whose compiled managed code sits in a section of its own; an apphost would
        // need weft.dll and a runtimeconfig beside it.
        var elf = File.ReadAllBytes(Binary);
        Assert.Equal("\u007fELF"u8.ToArray(), elf[..4]);
        Assert.True(elf.AsSpan().IndexOf("__managedcode\0"u8) > 0, $"{Binary} has no __managedcode section: not a NativeAOT build");
        var beside = Directory.GetFiles(Path.GetDirectoryName(Path.GetFullPath(Binary))!).Select(Path.GetFileName).ToList();
        Assert.DoesNotContain(beside, f => f!.EndsWith(".dll", StringComparison.Ordinal) || f.EndsWith(".runtimeconfig.json", StringComparison.Ordinal));
    }

    [AgentBinaryFact]
    public void LeavesOutTheGatewayAndTheCaService_AndKeepsTheAgentAndItsCli()
    {
        var (gateway, gatewayCode) = Run("gateway");
        Assert.Equal(2, gatewayCode);
        Assert.Contains("unknown command 'gateway'", gateway);

        var (serve, serveCode) = Run("ca", "serve");
        Assert.Equal(2, serveCode);
        Assert.Contains("unknown command 'serve'", serve);

        foreach (var command in new[] { "agent", "flows", "workloads", "check" })
        {
            var (help, code) = Run(command, "--help");
            Assert.True(code == 0, $"{command} --help exited {code}: {help}");
            Assert.Contains("Usage:", help);
        }
    }

    private static (string Output, int ExitCode) Run(params string[] args)
    {
        var info = new ProcessStartInfo(Binary) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info)!;
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = process.StandardOutput.ReadToEnd();
        Assert.True(process.WaitForExit(30_000), $"weft-agent {string.Join(' ', args)} did not exit in 30 s");
        return (stdout + stderr.Result, process.ExitCode);
    }
}
