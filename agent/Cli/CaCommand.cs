using Weft.Identity;

namespace Weft.Cli;

/// <summary><c>weft ca init</c>: a self-signed root CA for trying the mesh with mTLS standalone.</summary>
internal static class CaCommand
{
    public const string Usage = """
        weft ca init --dir DIR [--trust-domain cluster.local] [--days 365]
          Writes a new self-signed root CA (ca.crt, ca.key, bundle.crt) for `weft agent --ca-cert ...`.
          Production meshes bring their own CA or intermediate instead.
        """;

    public static int Run(CommandLine cl)
    {
        if (cl.Positional.FirstOrDefault() != "init")
        {
            throw new UsageException("weft ca: the only action is 'init'");
        }

        var dir = cl.Require("dir");
        var trustDomain = cl.Get("trust-domain") ?? "cluster.local";
        var days = cl.Int("days", 365);
        cl.RejectUnknown();
        if (SpiffeId.ValidateTrustDomain(trustDomain) is { } problem)
        {
            throw new UsageException($"--trust-domain: {problem}");
        }

        if (File.Exists(Path.Combine(dir, "ca.key")))
        {
            throw new UsageException($"{dir} already holds a CA key; refusing to overwrite it");
        }

        var files = SelfSignedRoot.Write(dir, trustDomain, TimeSpan.FromDays(days));
        Console.WriteLine($"root CA for trust domain {trustDomain} written:");
        Console.WriteLine($"  weft agent ... --trust-domain {trustDomain} --ca-cert {files.CertificatePath} --ca-key {files.KeyPath} --trust-bundle {files.TrustBundlePath}");
        return 0;
    }
}
