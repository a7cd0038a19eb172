using System.CommandLine;
using System.CommandLine.Invocation;
using System.Reflection;
using Weft.Capture;

namespace Weft.Cli;

/// <summary>
/// <c>weft version</c> and <c>weft --version</c>: what a bug report needs to name this build, and the
/// layout of the pinned BPF maps, which decides whether an agent can adopt another's pins.
/// </summary>
internal static class VersionCommand
{
    public static Command Create()
    {
        var command = new Command("version", "Prints the version, the git commit it was built from and the BPF map-layout version.");
        command.SetAction(result => Write(result.InvocationConfiguration.Output));
        WeftCli.Examples(command, "weft version", "weft --version");
        return command;
    }

    /// <summary>"0.1.0", without the commit that the informational version carries after '+'.</summary>
    public static string Version => Informational.Split('+')[0];

    /// <summary>The git commit the build embedded (SourceRevisionId), or "unknown" for a build outside git.</summary>
    public static string Commit => Informational.Split('+') is [_, var commit, ..] && commit.Length > 0 ? commit : "unknown";

    private static string Informational =>
        typeof(VersionCommand).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0.0.0";

    private static int Write(TextWriter output)
    {
        output.WriteLine($"weft {Version}");
        output.WriteLine($"commit: {Commit}");
        output.WriteLine($"bpf map layout: {MapLayout.LayoutVersion}");
        return WeftCli.Ok;
    }

    /// <summary>--version prints the same as <c>weft version</c>.</summary>
    internal sealed class PrintVersion : SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parseResult) => Write(parseResult.InvocationConfiguration.Output);
    }
}
