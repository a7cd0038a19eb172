using System.CommandLine;
using Weft.Identity;

namespace Weft.Cli;

/// <summary><c>weft ca init</c>: a self-signed root CA for trying the mesh with mTLS standalone.</summary>
internal static class CaCommand
{
    private static readonly Option<string> Dir = new("--dir") { HelpName = "DIR", Description = "Directory to write ca.crt, ca.key and bundle.crt into (created if missing).", Required = true };
    private static readonly Option<string> TrustDomain = new("--trust-domain") { HelpName = "TD", Description = "SPIFFE trust domain the CA signs for.", DefaultValueFactory = _ => "cluster.local" };
    private static readonly Option<int> Days = new("--days") { HelpName = "N", Description = "How long the root is valid.", DefaultValueFactory = _ => 365 };

    public static Command Create()
    {
        var init = new Command("init", "Writes a new self-signed root CA (ca.crt, ca.key, bundle.crt) for `weft agent --ca-cert ...`. Production meshes bring their own CA or intermediate instead.")
        {
            Dir, TrustDomain, Days,
        };
        init.SetAction(Init);
        WeftCli.Examples(init, "weft ca init --dir /etc/weft/ca", "weft ca init --dir ./ca --trust-domain example.org --days 30");
        var ca = new Command("ca", "Certificate authority helpers for trying the mesh with mTLS standalone.") { init };
        WeftCli.Examples(ca, "weft ca init --dir /etc/weft/ca");
        return ca;
    }

    private static int Init(ParseResult cl)
    {
        var dir = cl.GetRequiredValue(Dir);
        var trustDomain = cl.GetRequiredValue(TrustDomain);
        var days = cl.GetValue(Days);
        if (days < 1)
        {
            throw new UsageException($"--days wants 1 or more, got {days}");
        }

        if (SpiffeId.ValidateTrustDomain(trustDomain) is { } problem)
        {
            throw new UsageException($"--trust-domain: {problem}");
        }

        if (File.Exists(Path.Combine(dir, "ca.key")))
        {
            throw new UsageException($"{dir} already holds a CA key; refusing to overwrite it");
        }

        var files = SelfSignedRoot.Write(dir, trustDomain, TimeSpan.FromDays(days));
        var output = cl.InvocationConfiguration.Output;
        output.WriteLine($"root CA for trust domain {trustDomain} written:");
        output.WriteLine($"  weft agent ... --trust-domain {trustDomain} --ca-cert {files.CertificatePath} --ca-key {files.KeyPath} --trust-bundle {files.TrustBundlePath}");
        return 0;
    }
}
